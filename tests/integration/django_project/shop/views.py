import os

from django.contrib.auth import authenticate, login
from django.http import HttpRequest, JsonResponse

from tests.integration.django_project.shop.models import Invoice


def create_invoice(request: HttpRequest) -> JsonResponse:
    invoice = Invoice.objects.create(
        number=request.POST["number"],
        customer=request.POST["customer"],
        total=int(request.POST["total"]),
    )
    return JsonResponse({"id": invoice.pk}, status=201)


def update_invoice(request: HttpRequest, pk: int) -> JsonResponse:
    invoice = Invoice.objects.get(pk=pk)
    invoice.total = int(request.POST["total"])
    invoice.save()
    return JsonResponse({"id": invoice.pk})


def ping(request: HttpRequest) -> JsonResponse:
    """A plain page: easyaudit records one request event for it."""
    return JsonResponse({"pid": os.getpid(), "n": request.GET.get("n")})


def login_view(request: HttpRequest) -> JsonResponse:
    user = authenticate(
        request, username=request.POST["username"], password=request.POST["password"]
    )
    if user is None:
        return JsonResponse({"ok": False}, status=401)
    login(request, user)
    return JsonResponse({"ok": True})
