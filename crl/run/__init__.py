"""Run orchestration: build a run's parts (`components`), `crl train`, `crl eval`, `crl bench rollout`."""
