"""otalign.models"""
