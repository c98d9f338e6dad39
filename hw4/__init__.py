"""hw4: train and compare neural networks on Fashion-MNIST, configured by Hydra and tracked in
MLflow. The training core sits at the top of this package; `hw4.sweep` runs sweeps,
`hw4.commands` holds the console scripts other than `hw4-train`, and `hw4.runtime` the process
plumbing. docs/layout.md has the map."""
