"""Read models computed from the disk (status, attempts); they never write."""
