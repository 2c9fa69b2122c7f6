"""Reading run folders afterwards: the runs table, reports and plots, comparisons,
predictions and evaluation. Starts no Ray.
"""
