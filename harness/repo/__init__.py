"""Everything that runs git: worktrees, attempt branches, the merge queue."""
