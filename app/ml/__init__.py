"""mixlab's ML core: data, mixing, models and training.

Imports only torch and numpy at module level, so it runs in a notebook or on a
GPU box without the web stack. Nothing here may import ``app.api``, ``app.db``
or ``worker``.
"""
