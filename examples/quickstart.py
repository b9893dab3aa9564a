"""Send one message of each type, and see what arrived.

    python examples/quickstart.py

With no credentials it starts a local stand-in for Vitally in this process and
sends there, so it works offline. With VITALLY_WRITE_KEY and VITALLY_SUBDOMAIN
(or VITALLY_HOST) set, it sends the same six messages there instead: to your
Vitally account, they name a "Quickstart" organization, account and user you can
delete afterwards.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

import analytics_vitally as analytics
from analytics_vitally.testing import Receiver


def send_examples() -> None:
    """One call per message type, as an application would make them."""
    analytics.organization("quickstart-org", {"name": "Quickstart Inc."})
    analytics.group("quickstart-acct", {"name": "Quickstart Team", "plan": "trial"}, organization_id="quickstart-org")
    analytics.identify(
        "quickstart-user", {"name": "Ada Lovelace", "email": "ada@example.com"}, account_id="quickstart-acct"
    )
    analytics.track("quickstart-user", "report-viewed", {"report": "weekly usage"}, account_id="quickstart-acct")
    analytics.custom_object_instance(
        "quickstart-deal",
        "quickstart-deals",  # your custom object's ID in Vitally
        {"stage": "won", "amount": 1200},
        name="First deal",
        account_id="quickstart-acct",
    )
    analytics.unlink("quickstart-user", "quickstart-acct")


def report_failure(error: Exception, messages: List[Dict[str, Any]]) -> None:
    print(f"not delivered ({len(messages)} message(s)): {error}", file=sys.stderr)


def main() -> int:
    analytics.on_error = report_failure
    if os.environ.get("VITALLY_WRITE_KEY") and (os.environ.get("VITALLY_SUBDOMAIN") or os.environ.get("VITALLY_HOST")):
        # write_key and subdomain (or host) come from the environment.
        send_examples()
        analytics.flush()
        stats = analytics.stats()
        print(f"{stats.sent} message(s) sent to {analytics.default_client().settings.url}, {stats.failed} failed")
        return 0 if stats.sent == 6 else 1

    with Receiver(token="quickstart-token") as receiver:
        analytics.write_key = "quickstart-token"
        analytics.host = receiver.url
        where = f"a local receiver at {receiver.url}"
        print(f"no VITALLY_WRITE_KEY with VITALLY_SUBDOMAIN or VITALLY_HOST: sending to {where}")
        send_examples()
        analytics.flush()
        print(f"it accepted {len(receiver.messages)} message(s):")
        for message in receiver.messages:
            print(f"  {message['type']:<21} {json.dumps(message)}")
        analytics.shutdown()
    return 0 if len(receiver.messages) == 6 else 1


if __name__ == "__main__":
    sys.exit(main())
