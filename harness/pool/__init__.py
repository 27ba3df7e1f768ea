"""The processes: the coordinator that supervises, the workers that claim and run."""
