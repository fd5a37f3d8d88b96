"""The engine: the model catalogue and the choice of "auto", preprocessing, inference (device, precision, sliding
window), postprocessing, and the pipeline that runs a Case through them."""
