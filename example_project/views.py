from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie


@ensure_csrf_cookie
def home(request: HttpRequest) -> HttpResponse:
    """A button per pattern; the page's script calls the JSON API with the CSRF token."""
    base = request.build_absolute_uri("/").rstrip("/")
    return render(request, "home.html", {"base": base})
