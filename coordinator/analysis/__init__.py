"""Analyses of a run or several: trends, soak, spike, comparison, stress steps. Pure."""
