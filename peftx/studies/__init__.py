"""Many runs: sweeps, the learning-rate selection rule, reports and budget tables."""
