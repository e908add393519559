"""Training errors the recipe reports as a clean message; kept free of heavy imports so catching them is cheap."""


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the message names the stage and step, and the last good checkpoint."""
