"""What every task runs on: device and precision policy (`device`), loading weights (`weights`),
output sizes (`sizing`), the memory-bounded inference engine (`engine`), the `Upscaler` that
holds them together (`upscaler`), and a task's process: its stop signals and ranks
(`process`). It imports no task and no training or evaluation data (tests/test_layout.py)."""
