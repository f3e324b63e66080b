"""Apps that the integration and chaos tests run as ``onceflow worker`` subprocesses.

Topic names come from ``ONCEFLOW_TEST_*`` variables so that every test uses fresh topics.
"""
