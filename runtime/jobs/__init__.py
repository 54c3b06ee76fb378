"""The corpus job: plan -> parts -> commit (`plan`, `part`, `state`, `commit`, `output`),
run by the local executor (`local`)."""
