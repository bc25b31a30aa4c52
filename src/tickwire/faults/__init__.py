"""Connectivity testing: venue-level faults and the report of how clients reacted.

:mod:`tickwire.faults.report` is the report (Sans-I/O); see docs/connectivity-testing.md.
"""
