from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import analytics_vitally as analytics


@csrf_exempt
@require_POST
def signup(request: HttpRequest, user_id: str) -> JsonResponse:
    queued, message = analytics.track(user_id, "signed-up", {"via": "web"}, account_id="acct-1")
    return JsonResponse({"queued": queued, "messageId": message["messageId"]})
