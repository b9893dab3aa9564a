"""An AWS Lambda handler (or any function that must finish its work before it returns).

Lambda freezes the process when the handler returns, and may never thaw it: messages
still queued would be lost. ``flush_after`` delivers them before the handler returns
(or raises), waiting at most ``timeout`` seconds.

    VITALLY_WRITE_KEY=... VITALLY_SUBDOMAIN=acme  (the function's environment variables)
    handler: lambda_handler.handler
"""

from __future__ import annotations

from typing import Any, Dict

import analytics_vitally as analytics

# At cold start, once per execution environment: a bad setting fails the init, not every call.
analytics.configure()


@analytics.flush_after(timeout=2.0)
def handler(event: Dict[str, Any], context: Any) -> Dict[str, Any]:
    signups = event.get("signups", [])
    for signup in signups:
        analytics.identify(signup["user_id"], {"email": signup["email"]}, account_id=signup["account_id"])
        analytics.track(signup["user_id"], "signed-up", account_id=signup["account_id"])
    if event.get("fail"):
        raise RuntimeError("the handler failed after tracking: what it queued is delivered all the same")
    return {"statusCode": 200, "body": f"{len(signups)} signups"}
