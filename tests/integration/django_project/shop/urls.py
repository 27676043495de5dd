from django.contrib import admin
from django.urls import path

from tests.integration.django_project.shop import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("ping/", views.ping),
    path("login/", views.login_view),
    path("invoices/", views.create_invoice),
    path("invoices/<int:pk>/", views.update_invoice),
]
