"""Trial recording: protocols, trial bookkeeping, bag writing and repair, reports, dataset export.

No ROS imports: the trial_recorder node feeds this package serialised messages and times.
"""
