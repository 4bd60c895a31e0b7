{#- Every value of an array column holds at least one element. -#}
{% test array_not_empty(model, column_name) %}

select * from {{ model }}
where {{ column_name }} is null or {{ array_size(column_name) }} = 0

{% endtest %}
