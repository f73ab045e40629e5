"""The chosen model and every candidate as one typed, versioned artifact: :mod:`spec` (ModelSpec,
the only reader and writer of ``model.json``), :mod:`save` (each candidate kind's files),
:mod:`store` (the run folder) and :mod:`serve` (load any spec and predict)."""
