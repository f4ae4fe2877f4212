"""The tasks behind the commands, siblings over the runtime layer: upscale, batch, evaluate,
train, bench, export. No task imports another."""
