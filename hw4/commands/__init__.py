"""The console scripts other than `hw4-train`, one module each: `hw4-compare`, `hw4-promote`,
`hw4-report`, `hw4-homework`, `hw4-clean` and `hw4-scratch` (the NumPy 2-3-1 network of the
homework's part 1). Each starts through `hw4.config.run_app` with its own config in conf/."""
