"""Background jobs: the contract, the runner, the SQS worker's policy, scheduling and intake."""
