"""The alarm logic: policy, rules, the alarm state machine, ranking and the burden report.

Pure computation like :mod:`eicu.scores`: derived values and conditions in, conditions and alarm
events out, time only from its arguments. The data types are in :mod:`eicu.alarm_model`.
"""
