"""Containment actions: each one plans (as data), applies, verifies and rolls back.

Layout: ``config`` (policies, modes, limits; validated at load), ``base`` (the
action contract and the step executor), one module per action kind registered
in ``registry``, ``ledger`` and ``approvals`` (state-store records that make
decisions exactly-once and reviewable), ``credentials`` (per-account sessions),
``engine`` (the decision flow shared by the contain stage and the operator
commands in ``ops``).

What the local AWS stand-in (moto 5.2 server) cannot show, and how the tests cope:

- After ``ModifyNetworkInterfaceAttribute`` moto's interface view lists the old
  groups and the new one. Single-interface isolation therefore uses
  ``ModifyInstanceAttribute`` (which ``DescribeInstances`` reports correctly and
  AWS documents as changing the primary interface); the multi-interface path is
  checked at the plan level only.
- moto accepts ``ModifyInstanceAttribute(Groups=...)`` on multi-interface
  instances, which AWS rejects; Riposte never issues it there.
- Deleting a NACL entry that does not exist is a 500 in moto; rollback deletes
  only entries it finds, so it never asks.
- IAM denies and inactive keys are not enforced by moto: tests check state only.
- Route 53 Resolver DNS Firewall is missing (500): ``dns.block_domain`` is tested
  against a local fake of its JSON API instead.
- moto never throttles and does not deny: throttling and AccessDenied are tested
  against a local fake of the IAM query API.
"""
