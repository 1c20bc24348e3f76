"""medft.workflows: one module per command that runs after training, also the Python API.

Each module holds the function its ``medft`` command calls (``medft predict`` ->
:func:`medft.workflows.predict.predict`, ``medft export`` ->
:func:`medft.workflows.export.export`); the CLI only parses arguments and prints.
"""
