# Issue 19: the station's own name, states ordered by arrival, each event's clock_synced.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('console', '0004_health'),
    ]

    operations = [
        migrations.AddField(
            model_name='station',
            name='label',
            field=models.CharField(blank=True, default='', max_length=100, verbose_name='station name'),
        ),
        migrations.AddField(
            model_name='station',
            name='state_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='event',
            name='clock_synced',
            field=models.BooleanField(null=True),
        ),
    ]
