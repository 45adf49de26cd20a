from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def home(request: HttpRequest) -> HttpResponse:
    """What to try, with copy-paste curl lines for this server's address."""
    base = request.build_absolute_uri("/").rstrip("/")
    return render(request, "home.html", {"base": base})
