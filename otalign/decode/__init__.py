"""otalign.decode"""
