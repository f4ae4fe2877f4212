"""What every task runs on: device and precision policy (`device`), loading weights (`weights`),
output sizes (`sizing`), the memory-bounded inference engine (`engine`) and the `Upscaler` that
holds them together (`upscaler`)."""
