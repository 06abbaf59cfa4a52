"""otalign.text"""
