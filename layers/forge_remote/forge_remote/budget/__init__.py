"""Atlassian's points quota, shared by the fleet: a policy, a ledger across containers, a meter per job.

``policy`` (how much background work may spend, when it goes on), ``ledger`` (DynamoDB atomic counters
per UTC hour), ``meter`` (what the Confluence client calls around each request), ``slots`` (stable
per-installation slots that spread scheduled and waiting work over a window).
"""
