"""Search over configs with Optuna: the space (``space``), the study (``study``), one candidate's
training (``objective``), the report (``report``), ``mmagent tune`` (``tune``) and the budgeted
search that ``mmagent fit`` builds on (``budget``)."""
