"""Migrate, then act like a user: log in, create and update an invoice over HTTP, fail
to log in (a known and an unknown user), then move a payment between two invoices.

Prints one JSON line with the ids the test looks for in MongoDB. The process then
exits; at exit the producer sends what is still spooled while Kafka answers (for at
most ``close_grace``); anything left would be drained by the next process.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.test import Client

from tests.integration.django_project.shop.models import Invoice, Payment


class Command(BaseCommand):
    help = "Exercise the shop so django-easy-audit emits CRUD, login and request records."

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", run_syncdb=True, verbosity=0)
        user = get_user_model().objects.create_user("alice", password="s3cret-pw")
        client = Client(HTTP_USER_AGENT="shop-demo/1.0", HTTP_X_REQUEST_ID="req-42")
        assert client.login(username="alice", password="s3cret-pw")
        created = client.post(
            "/invoices/", {"number": "INV-1", "customer": "Globex", "total": "10"}
        )
        invoice_id = created.json()["id"]
        updated = client.post(f"/invoices/{invoice_id}/", {"total": "12"})
        assert updated.status_code == 200
        for name in ("alice", "mallory"):
            failed = client.post("/login/", {"username": name, "password": "wrong"})
            assert failed.status_code == 401
        second = Invoice.objects.create(number="INV-2", customer="Initech", total=7)
        payment = Payment.objects.create(invoice_id=invoice_id, amount=12)
        payment.invoice = second
        payment.save()
        self.stdout.write(
            json.dumps(
                {
                    "user_id": user.pk,
                    "invoice_id": invoice_id,
                    "invoice2_id": second.pk,
                    "payment_id": payment.pk,
                }
            )
        )
