"""Taking a pruned model elsewhere: model folders, run records, mergekit."""
