"""The admin with auditstream's History view (``AuditHistoryMixin``)."""

from django.contrib import admin

from auditstream.django.admin import AuditHistoryMixin
from tests.integration.django_project.shop.models import Invoice, Payment


@admin.register(Invoice)
class InvoiceAdmin(AuditHistoryMixin, admin.ModelAdmin):  # type: ignore[misc]
    list_display = ("number", "customer", "total")


@admin.register(Payment)
class PaymentAdmin(AuditHistoryMixin, admin.ModelAdmin):  # type: ignore[misc]
    list_display = ("invoice", "amount")
