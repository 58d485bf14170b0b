"""Black-box attacks on real hub and agent processes over real sockets (issue: trust outside the lab).

Each test starts the real processes (``python -m hub serve``, ``python -m agent run``) on 127.0.0.1,
attacks them the way an attacker or a careless store would, and asserts what a user then sees.
"""
