"""Training recipes tests run with.

``SHORT`` is the recipe for the few-epoch runs that test something other
than the recipe (tasks, fusion, resume): AdamW at a constant 3e-3 without
augmentation, which learns within an epoch or two, where the default cosine
schedule would spend a short run decaying.
"""

SHORT = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.01, "schedule": "constant",
         "augment": ()}
