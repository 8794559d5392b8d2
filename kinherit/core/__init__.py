"""Infrastructure with no knowledge of KI: errors, atomic writes, locks, sealed folders, names and run logs.

May import: nothing of kinherit outside `kinherit.core`.
"""
