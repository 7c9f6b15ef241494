"""Planning a split: profile the devices and links at hand, predict every way to run, pick the best."""
