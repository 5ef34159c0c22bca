"""CloudTrail detections: small rules registered by decorator, run by the detect stage.

One module per rule family (``sensitive_api``, ``user_agent``, ``baseline``,
``iam_policy``, ``trust_policy``, ``cognito``, ``logging_tamper``, ``root_usage``);
``registry`` holds the registry and the rule base class, ``config`` the
``[detections]`` settings. See docs/detections.md.
"""
