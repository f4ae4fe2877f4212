"""What every task runs on: device and precision policy (`device`), loading weights (`weights`),
the memory-bounded inference engine (`engine`) and the `Upscaler` that holds them together."""
