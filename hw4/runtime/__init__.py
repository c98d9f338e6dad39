"""Process plumbing, none of it about models or tracking: run locks (`locks`), stop signals
(`signals`), cores and a fast exit (`system`), TensorFlow's start-up noise (`quiet`) and the
per-step clock (`timing`)."""
