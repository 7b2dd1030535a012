"""saekit.registry"""
