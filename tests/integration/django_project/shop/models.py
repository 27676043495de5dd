from django.db import models


class Invoice(models.Model):
    number = models.CharField(max_length=32, unique=True)
    customer = models.CharField(max_length=100)
    total = models.IntegerField()

    def __str__(self) -> str:
        return f"Invoice {self.number}"
