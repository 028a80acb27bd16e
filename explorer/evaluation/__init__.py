"""What a model scores: likelihood scoring, tasks, held-out loss, agreement."""
