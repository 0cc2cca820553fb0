"""The Bokeh Diffusion trainer (`bokeh train`): data, objectives, checkpoints and the training loop."""
