from django.db import models


class Invoice(models.Model):
    number = models.CharField(max_length=32, unique=True)
    customer = models.CharField(max_length=100)
    total = models.IntegerField()

    def __str__(self) -> str:
        return f"Invoice {self.number}"


class Payment(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE)
    amount = models.IntegerField()

    def __str__(self) -> str:
        return f"Payment of {self.amount}"
