"""The run lifecycle, in one place.

``status`` (the enum), ``lifecycle`` (the transition table and the one
function every status change goes through), ``spec`` (a stored spec parsed
for training), ``service`` (create, cancel, claim, progress, outcomes),
``attempt`` (the worker's calls, each in its own session), ``queue`` (the
Celery client), ``broker_contents`` (what the broker still holds),
``recovery`` (the sweeps for lost and dead runs), ``leader`` and
``reconciler`` (the thread that runs the sweeps, once per deployment).
"""
