"""Gaggle registry: the device inventory, from first poll to full history."""
